"""The ops dashboard's static files (HTML, CSS, one script), served by `hetagent serve`."""
