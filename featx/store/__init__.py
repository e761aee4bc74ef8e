"""The feature store: one HDF5 file per (dataset, extraction settings), found by a content
key. ``keys`` (the content key and every checksum), ``blocks`` (resumable extraction),
``write`` (whole stores and updates), ``read`` (checked reads), ``cache`` (list, verify,
remove) and ``export``.

Layout (every dataset has one row per image, in the dataset's sorted path order)::

    features     float32 (N, ...)   chunked by rows (~2 MB a chunk), lzf by default
    labels       int32   (N,)       index into label_names
    paths        utf-8   (N,)       relative to the dataset root
    split        int8    (N,)       0 train, 1 val, 2 test
    ok           bool    (N,)       False where the image could not be read (row is zeros)
    label_names  utf-8   (C,)
    signatures   utf-8   (N,)       size:mtime (or content hash) of each image when read
    skipped      utf-8   (K, 2)     path, reason of every unreadable image
    block_sha256 utf-8 (B,)       SHA-256 of each ``check_rows`` rows of features
    attrs: key (content key), settings_key, backbone settings, weights identity, versions,
           pipeline, split, root, features_sha256, columns_sha256, check_rows, complete

The file name carries the content key (settings plus the image manifest: featx/core/layout.py).
Extraction writes whole blocks into a ``.partial`` folder and assembles the store under a
temporary name renamed only when complete, so a finished store is never confused with an
unfinished one and a killed extraction resumes from its last finished block.

A store updated in place (a few images added or removed) is *segmented*: its file holds the
per-row columns in dataset order, ``feature_row`` (int64 (N,): the physical row of each
row's features), ``segments`` (attr, JSON: file name, rows and :func:`segment_digest` of
each segment, in ``<store>.segments/``) and ``features`` as a virtual dataset over the
segments in dataset order, so that plain h5py reads ``features``, ``labels`` and
``label_names`` from every store featx writes. Physical rows are the segments' ``features``
one after the other; each segment is an immutable HDF5 file with its own ``features``,
``block_sha256`` and ``check_rows`` (the first is usually the previous complete store,
hard-linked: no copy; featx refuses to open a segment as a store). An update writes a new
segment and a new small store file and never modifies a file of the previous store, so a
kill at any moment leaves the previous store as it was.

Integrity: ``labels``, ``split``, ``paths``, ``ok`` and ``label_names`` (and a segmented
store's ``feature_row`` and ``segments``) are checked against ``columns_sha256`` whenever a
store is opened (cheap: they are small), and each segment against the digest its store
recorded; features are checked block by block against ``block_sha256`` as they are read,
by every reader (an update copying rows and an export included), and HDF5's Fletcher-32
catches damage below that. A block that fails removes the store's ``.verified`` stamp, so
the next ``featx extract`` checks it whole and rebuilds it.

Duplicates (featx/data/groups.py), found right after each extraction or update: ``groups``
(int32 (N,): rows with one id are byte copies or near duplicates, kept on one side of every
split), ``near_pairs`` (int64 (K, 2)) and ``near_similarity`` (float32 (K,)): the near-duplicate
pairs and their cosine similarity; attrs ``groups`` (JSON: how they were found),
``groups_sha256`` (their checksum, bound to the store's key) and ``grouping`` (JSON: how the
stored split treats them; absent in stores of featx < 0.7, whose split is ungrouped).
"""
