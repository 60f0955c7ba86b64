"""Population screening: the rule pack over a FHIR Bulk Data export, one worklist row per patient with cards.

export     finds the NDJSON files of an export (folder or manifest.json) and reads their lines
routing    one line -> its patient and bucket, with the pack's filters (shared by both engines)
patients   one bucket's lines -> per-patient evaluation through the Evaluator -> worklist rows
worklist   rows, the summary, and the CSV / NDJSON / FHIR Bundle writers
local      the one-machine engine: partition to bucket files, a process pool, progress, --resume
spark      the same routing and evaluation on Apache Spark (optional extra `cramp-cds[spark]`)
"""
