"""Views of finished runs: figures, circuit graphs and reports. They read records; they never train or discover."""
