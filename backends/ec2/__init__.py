"""The Amazon EC2 backend: one public-cloud region per target, driven through boto3.

``backend`` runs and watches instances, ``batching`` decides what one RunInstances request
carries, ``limits`` keeps us inside EC2's request limits, ``states`` maps EC2's state names.
"""
