"""Reports a person can hand in: the app's charts, and runs written up as HTML or Markdown."""
