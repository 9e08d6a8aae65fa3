"""The lr-study command line: `python -m study.run` runs or resumes the study."""
