"""Tables: reading CSV / Parquet / .npy in chunks and the saved column preprocessing of ``dagmm fit``."""
