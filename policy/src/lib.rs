//! Portcullis domain core.
