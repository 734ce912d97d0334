"""What crosses the wire between clients and server: fit instructions, packed circuits, validated reports."""
