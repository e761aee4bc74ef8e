"""Results out: metrics, charts, pages from templates, the runs table.

Evaluation and reports: rank-1/rank-5, per-class scores, the confusion matrix and the
most-confused class pairs; written as JSON (everything), Markdown, a self-contained HTML page
and two PNG charts (confusion matrix, per-class recall).
"""
