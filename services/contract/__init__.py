"""The bus contract as code: the messages (pydantic models mirroring proto/schemas), their
JSON Schemas, the subjects and typed endpoints, and which model each subject carries.
No I/O here: every service and tool imports it."""
