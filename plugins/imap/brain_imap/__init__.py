"""IMAP mail provider for brain: any IMAP server, with CONDSTORE/QRESYNC and IDLE when offered."""
