"""The paper's tables, run: rows as an Optuna study, their statistics and their rendering.

One package cut by role, imports pointing one way (`rows` <- `stats` <- `render` <- `run`):

- `rows`: a table spec (`harness.config.table`) and the command line's settings -> the
  config of every row as run, and the note on what the command line changed;
- `stats`: per-query results of each row, 95 % bootstrap intervals and paired tests against
  the table's reference row;
- `render`: Markdown, CSV and LaTeX (ours beside the paper's), the sensitivity plot
  (Fig. 8), a row's artifacts, the files under `runs/tables/` and their MLflow copies;
- `run`: the table study and its row workers, MLflow runs of every row, and the table
  rendered from MLflow alone.
"""
