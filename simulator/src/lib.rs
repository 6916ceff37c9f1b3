//! OneRoster 1.1 simulator (placeholder; being written).
