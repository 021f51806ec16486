"""Clinician reviews: the table (``review.schema``), drafts and their validation
(``review.drafts``), the repository (``review.store``), PDF/CSV exports (``review.report``)
and the optional login (``review.auth``)."""
