"""Azure Storage: the send ledger (tables) and the relay queue. Knows no provider and no Dataverse."""
