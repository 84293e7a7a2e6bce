"""drlab: the disaster-recovery lab's workload tools.

``drlab.generator`` behaves like the authentication service: it writes signups, logins and token revocations to
whichever region serves, and journals every acknowledged write (``drlab.journal``). After a disaster,
``drlab.compare`` looks every journalled write up in the surviving database and computes the data lost (RPO);
the journal's failure and reconnect events give the write outage (RTO). See docs/generator.md.
"""

__version__ = "0.1.0"
