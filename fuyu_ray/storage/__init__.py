"""Storage: the record schema the bench writes and the driver reads, and the result store."""
