"""Records, their I/O, datasets and samplers, and the multi-subject data generation pipeline."""
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
