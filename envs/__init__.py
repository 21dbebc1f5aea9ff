"""Multi-task environments (MetaWorld MT1/MT10/MT50 and a tiny test environment)."""
