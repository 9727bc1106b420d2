//! x86_64 VM setup.
