"""VisCUIT (Lee, Wang, Hoffman & Chau, 2022): UDIS's under-performing subgroups, their neurons and concept patches, and Grad-CAM."""
