"""cramp-cds: CDS Hooks decision support for muscle cramps after calcium supplements."""
