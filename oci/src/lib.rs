//! OCI images flattened into a root file system directory.
