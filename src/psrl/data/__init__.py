"""Records and their JSONL I/O, loaded and resolved against their data root once: the bottom layer every other
package reads data through (the generation pipeline that writes records is :mod:`psrl.datagen`)."""
from psrl.data.records import (
    Record,
    RecordError,
    SubjectRef,
    load_records,
    read_records,
    resolve_records,
    resolve_under,
    write_records,
)

__all__ = ["Record", "RecordError", "SubjectRef", "load_records", "read_records", "resolve_records", "resolve_under",
           "write_records"]
