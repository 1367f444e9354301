"""Files: frepo's distilled-set file (artifact), other tools' files read into a set (foreign), and exports
of a set for other tools (export). Each module is imported where it is needed, so reading one format
never loads the readers of the others."""
