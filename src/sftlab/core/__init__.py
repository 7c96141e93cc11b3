"""Types, errors and hashing shared by every stage."""
