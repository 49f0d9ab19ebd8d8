"""analysis: reads representations (measurements, pictures, report). Never imports training code."""
