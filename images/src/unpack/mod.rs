//! Safe layer unpacking (filled by the unpack work).
