"""Clinician reviews: the database (``review.store``), PDF/CSV exports (``review.report``) and
the optional login (``review.auth``)."""
