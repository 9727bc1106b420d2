//! Device passthrough on iommufd.
