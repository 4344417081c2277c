"""First contact with the card: `ax-llm doctor --calibrate MODEL` measures the card path and stores the choices
(record.py: the typed record the axcl backend reads; run.py: the measurements; probes.py: per-call costs and
fault codes; report.py: the command and its one-screen summary)."""
