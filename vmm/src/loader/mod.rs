//! Kernel loaders.
