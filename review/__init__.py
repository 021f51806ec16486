"""Clinician reviews: the table (``review.schema``), drafts and their validation
(``review.drafts``), the reviewer's marks and the heatmaps' scores against them
(``review.marks``), the repository (``review.store``), PDF/CSV exports (``review.report``),
agreement and heatmap hits (``review.agreement``) and the optional login (``review.auth``)."""
