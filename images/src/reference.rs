//! Image references: parsing and normalisation (filled by the registry work).
