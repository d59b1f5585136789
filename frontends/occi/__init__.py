"""The OCCI 1.2 frontend: the OGF Open Cloud Computing Interface over HTTP.

``categories`` decides which kinds, mixins and actions exist and which attributes are valid;
``parse`` turns text/plain, text/occi, application/occi+json and text/uri-list requests into
neutral structures; ``render`` turns them back into responses and negotiates the media type.
"""
