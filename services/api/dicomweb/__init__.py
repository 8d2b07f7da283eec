"""DICOMweb (PS3.18): QIDO-RS searches and WADO-RS retrieval of the catalog, per lab."""
