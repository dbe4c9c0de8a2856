"""The benchmark harness (`make bench`). See bench/README.md."""
