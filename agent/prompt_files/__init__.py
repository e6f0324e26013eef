"""Prompt data files (teacher.md, student.md); a package so setuptools ships them."""
