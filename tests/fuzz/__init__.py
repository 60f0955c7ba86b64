"""Coverage-guided fuzzing of the request parser (atheris); see fuzz_request.py."""
