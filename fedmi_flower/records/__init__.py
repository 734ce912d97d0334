"""Records on disk: the typed round record, the run directory that stores it, and its series over rounds."""
