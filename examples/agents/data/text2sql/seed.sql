-- Sample rows for schema.sql, so the text2sql agent has something to query.
INSERT INTO customers VALUES
  (1, 'Ada Weber',      'ada@example.org',    'DE', '2024-01-14T09:12:00Z'),
  (2, 'Ben Okafor',     'ben@example.org',    'NG', '2024-02-03T18:40:00Z'),
  (3, 'Chloe Martin',   'chloe@example.org',  'FR', '2024-03-22T11:05:00Z'),
  (4, 'Dan Smith',      'dan@example.org',    'US', '2024-05-09T15:30:00Z'),
  (5, 'Eva Novak',      'eva@example.org',    'CZ', '2024-07-01T08:00:00Z'),
  (6, 'Farid Haddad',   'farid@example.org',  'US', '2024-09-17T20:45:00Z');

INSERT INTO categories VALUES (1, 'Coffee'), (2, 'Equipment'), (3, 'Accessories');

INSERT INTO products VALUES
  (1, 1, 'House espresso blend 1 kg',   2490, 120),
  (2, 1, 'Ethiopia Guji 250 g',         1450,  40),
  (3, 1, 'Decaf Colombia 500 g',        1690,   0),
  (4, 2, 'Brightwell E2 espresso machine', 54900, 8),
  (5, 2, 'Conical burr grinder',        21900,  12),
  (6, 3, 'Tamper 58 mm',                 3490,  55),
  (7, 3, 'Milk jug 350 ml',              1990,  70),
  (8, 3, 'Descaling powder (4 doses)',    990, 200);

INSERT INTO orders VALUES
  (101, 1, '2024-06-02T10:15:00Z', 'delivered'),
  (102, 2, '2024-06-20T19:02:00Z', 'delivered'),
  (103, 1, '2024-08-11T07:45:00Z', 'delivered'),
  (104, 3, '2024-09-05T13:20:00Z', 'cancelled'),
  (105, 4, '2024-10-30T22:10:00Z', 'shipped'),
  (106, 6, '2024-11-29T16:00:00Z', 'delivered'),
  (107, 5, '2024-12-14T09:35:00Z', 'pending'),
  (108, 4, '2025-01-08T12:00:00Z', 'delivered');

INSERT INTO order_items VALUES
  (101, 4, 1, 52900), (101, 6, 1, 3490), (101, 1, 2, 2490),
  (102, 5, 1, 21900), (102, 2, 2, 1450),
  (103, 1, 3, 2290),  (103, 8, 1,  990),
  (104, 4, 1, 54900),
  (105, 2, 4, 1450),  (105, 7, 1, 1990),
  (106, 4, 1, 49900), (106, 5, 1, 19900), (106, 1, 1, 2490),
  (107, 3, 2, 1690),
  (108, 1, 2, 2490),  (108, 8, 2,  990);

INSERT INTO reviews VALUES
  (1, 4, 1, 5, 'Great shots after a week of dialing in.',       '2024-06-20T08:00:00Z'),
  (2, 5, 2, 4, 'Consistent grind, a bit loud.',                  '2024-07-02T21:10:00Z'),
  (3, 1, 1, 4, NULL,                                             '2024-08-20T09:00:00Z'),
  (4, 4, 6, 3, 'Steam wand is slow to heat up.',                 '2024-12-10T17:25:00Z'),
  (5, 2, 4, 5, 'Fruity and bright, exactly as described.',       '2024-11-15T10:40:00Z');
