"""Reading a party's own data: tables (CSV, Parquet), ID checks, JSON outputs, synthetic sets."""
