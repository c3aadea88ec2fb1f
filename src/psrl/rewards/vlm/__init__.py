"""VLM judge: one interface (p_yes / rubric modes), two transports (local transformers, OpenAI-compatible HTTP)."""
