# One image for both sides: the provider (lowrank-server) and the attacker (lowrank-attack).
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY server ./server
COPY attacker ./attacker
RUN pip install --no-cache-dir .

# Keys come from the environment (LOWRANK_API_KEYS, LOWRANK_ADMIN_KEY); see docker-compose.yml.
RUN mkdir -p /data
EXPOSE 8000
CMD ["lowrank-server", "--model", "english-words", "--host", "0.0.0.0", "--port", "8000", "--ledger", "/data/ledger.sqlite3"]
