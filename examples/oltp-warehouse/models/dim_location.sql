WITH a AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY address_id ORDER BY last_updated DESC) AS rn FROM address)
SELECT address_id AS location_id, address_line_1, address_line_2, district, city, postal_code, country, phone
FROM a WHERE rn = 1
