"""analysis: reads dumps and writes measurements, pictures and the report. It imports the pipeline's
settings, records and dump format, and the model code where a measurement reruns a stack (influence);
never a stage's writer."""
