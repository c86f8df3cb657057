//! The statistics of scores (placeholder, being written).
