"""PHI in transit: GET searches become POST ``_search``; paging links become cursors."""
