#!yaml|gpg
# Encrypted with bin/encrypt-secret for the salt-master key keys/salt-master.asc; only
# ciphertext lives here. Re-encrypt each value when the master key changes.
docker_secrets:
  postgres_user: |
    -----BEGIN PGP MESSAGE-----

    hQGMAw5JB2H2tk/tAQv9EuUmhlQA06PbqJ0V7fZXV4r15p/sL9MOyF7atTugR5X8
    uUeVqNqkQ1D0aho1Kc5OvyzjyemSaBs2DqE0uxqYGQaSpSfdyi92kvjbhTj/jY9Z
    K2uWlC813ZAWXhyfz7D5TJI0sRMMzh0++rYMlKEpWmnDMkMee8Jz+LxtL++V3iMy
    0X+Q5URw1OEA1NaLe5Atlapc6B2492o2u/MVXq1qW35o88NOLk/MdhtufB+wXsR+
    b+QtEga/jzGey5s6ZFAeKYfcWH4UeOHUIbZkZDRJHEbGjSg6cLi8WksDvSQN5f1x
    KCazGtKx2f0VMzY5A7Odv1hyAqZhjiCJQlTnTMIr5MGMmA2Uar3Tf/c4SbTE7TDS
    SUo4thEcu6uZpvHT7F7PpGVJxq/nZ9DXTWNeRp9WEryXFQITIaVYjzv9VO7KmUJx
    sZIInjgChwRGQlzk019N8aot3aKJGBsEr0HoopnYBSpbMgvPBi/j5HlnpOcJtgo0
    SzetjApf3T4ET0R9p8hN0kMBbdVbr0SS/YjEeMZFjpAhaAKS+ttZTnkNdlWTRqc5
    cxrN9pLb78bi8n294WakxbCjaBv+4UCkYnJ6g9k5m1G6RZbv
    =oLp/
    -----END PGP MESSAGE-----
  postgres_password: |
    -----BEGIN PGP MESSAGE-----

    hQGMAw5JB2H2tk/tAQwAlOf/mpMZ2QsRlV80cNLd4COtyw9VImdFNFYizrBFRv9J
    ClVyxkV7qpw4tV53Ato7yttPP5QKs4jXZStxlf7ME2G62VY552e6ajUQnnYm8MKr
    P0k1jl3oPATBN9rFvTZhG2irAg+rp1i5Z9tkf7Co2dZFtvkXCWRsw10S+QIQ8Ee1
    G6f6Eta03JhoiWn7aWluKEoT0Pl42XLoL8CZPZFeuYSGsuGfkv8ymp5icocFOv5U
    b3RNm7SCjHs7jeIscFaKLGXsCVtEv7S3qBeYLzF9kF/Iu6dFi22oV9vcOp1jUIYY
    H0PYyU5j74x7vKN/Hrhyv1W75C6AQUvw+jPUVrioJOCEJp+WLA3nJeZHcjmflECn
    tK46e1bHpkVv/QE8TvAzjgATfvjZ0ubeveKbstkfZI3St1LBPCwSxZKpW1WzFO+v
    qgxPKoR85g2PSlPV5d1dO9WszSSJSHtOIxD0EojBuihmJE8BWAEq+dJFOtPvVD64
    ZCjatB52B2L/IWJogphj0lEBsQexty1nI2+UG7WyeqWlbbRYRId6I22NmZxjQPKM
    TCCwnnwRbNfC8nLurjtPWypb12eQBbIE77qZn74hdVK9/0kKCN25IQYs9KZUTO2I
    Uig=
    =GApT
    -----END PGP MESSAGE-----
  postgres_db: |
    -----BEGIN PGP MESSAGE-----

    hQGMAw5JB2H2tk/tAQwArZ0kxpDS6Vo0TroRNm9wd3p3XjjkDrtZ7FhampEIP2lJ
    6YcLlv243xWQfgqXk6eIwggxaO5a+5X/dx8a3T4L0bwXmok/Ls1V5HzXbYrBdmE+
    BNOB6qQa9UDaY0XjQOHsT1JtWtukEGv4U3nS++GlGtt2nbf5LApCR4FB9u28NoBy
    H1UgwHZIYk2RkrHiZuHStUq06C6zH7edmAwTm89t4zIws6OPRW0+wkWPSDHPh81M
    H4pFa7w8OiJBIi9XEPlSenXOw5Yu6pTCWDPylt7cL6aQRM6ZCf1LpvgBm09H7FI5
    3ZgAZ4cBhoRiwpio43cp2IINc0ijzhfAcMnRSItvKfU6JjpKoF5RIEMI6Pja0hHY
    d7wh1YBJF+jQinaqxrBmOxtewUVR/8/8EYEaNiXEbHhYjxjlxKub+cDRQmaYPkHu
    Si8QCWLvVAkYCgEWwsQQcJNgh6MI5wnZySO3WMGsqYBm9A0iQ8SuBNr6B2m9uesc
    k62WVz+viWOka5A4bo2n0kABHOdKI58Z00Wtzu/8cQqV1vvHvPRIgKHkeHwgwa/N
    5BWOx1HIEKeapLx70P/CqAhrCQtwrhJBT4WLvwy+erwn
    =MrJ4
    -----END PGP MESSAGE-----
