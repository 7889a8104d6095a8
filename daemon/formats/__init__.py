"""Machine-readable renderings of a result for CI: SARIF 2.1.0 and GitHub Actions annotations."""
