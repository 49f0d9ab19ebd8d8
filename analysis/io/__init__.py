"""Reading and writing what the measurements share: the analysis settings, dumps (through pipeline.dump.format), word spans, metric tables and their records."""
