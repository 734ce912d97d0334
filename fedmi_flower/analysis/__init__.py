"""The server's analysis of a round: orchestration of the science over the clients' reports."""
