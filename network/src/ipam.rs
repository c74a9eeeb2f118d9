//! IP address management (filled by the IPAM work).
